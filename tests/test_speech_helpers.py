"""The word error rate the speech tests rely on."""

from speech import word_error_rate


def test_word_error_rate_counts_edits_over_reference_words():
    assert word_error_rate("the cat sat", "The cat sat.") == 0.0
    assert word_error_rate("the cat sat", "the bat sat") == 1 / 3  # substitution
    assert word_error_rate("the cat sat", "the sat") == 1 / 3  # deletion
    assert word_error_rate("the cat sat", "the cat sat down") == 1 / 3  # insertion
    assert word_error_rate("a b", "") == 1.0
