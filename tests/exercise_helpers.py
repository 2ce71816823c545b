"""Helpers shared by the checker tests: a learner's stub, and an assertion that a checker names the mistake."""

import pytest

from paligemma.exercises import ExerciseError


def not_written(*args, **kwargs):
    """What a student copy holds before the learner writes anything."""
    raise NotImplementedError("Exercise: write your solution here")


def assert_rejected(checker, candidate, *phrases):
    """The checker raises ExerciseError and its message contains every phrase."""
    with pytest.raises(ExerciseError) as caught:
        checker(candidate)
    message = str(caught.value)
    for phrase in phrases:
        assert phrase in message, message
