"""AI feedback: preference labels from normalized option log-probs (``preference``), binary KTO
labels (``binary``), direct 1–10 scores and the reusable reward ``score.score_responses``
(``score``), and evaluation of a labeler against gold comparisons (``evaluate``).

Nothing is imported here, so ``cai --help`` does not pay for these modules.
"""
