"""Closed-loop attribution: private intersection-sum with windows and lift.

After Private Join and Compute (Ion et al. 2020), two-party, semi-honest
(DESIGN.md §6). B = brand node (conversions, Paillier key), P = partner
(exposure log). Tokens bind an identifier and a UTC day: ``T(id, day) =
H_type(digest || day)``. P expands nothing: each exposure row of day ``d``
gives the token ``T(id, d)`` in its cell (campaign, group, touch). B expands
each conversion of day ``c`` into ``T(id, c - lag)`` for ``lag`` in
``0..max_lag`` and labels the token with the lag, so a match of a brand token
with lag ``L`` against a partner cell means "a conversion ``L`` days after an
exposure of that cell, same person". Windows are then P's check ``L <= W_touch``.

Rounds (``AttrRound``):

``HELLO``    P: conversions set name, windows, its identifier types,
             requested epsilon, submission key; sent once P has read and
             validated its log, before it hashes it. B: policy checks (the
             DP budget before any work), ``AttrAccepted`` with the Paillier
             public key, the DP parameters P must apply and the identifier
             types both hold (only those are tokenized: other types cannot
             match). B starts on its own tokens and encrypted values at once.
``CELLS``    P prepares its log (types in common only) and sends its cell
             labels with their token counts. Both sides derive the
             comparison length from the two token counts.
``TOKENS``   P streams T(x)^p per cell. B re-blinds, shuffles within the
             cell (P can no longer link a value to a user) and returns it.
             B streams its conversion tokens T(y)^b shuffled, each with an
             anonymous event index and its lag, and per event (in anonymous
             order) an anonymous customer index and Enc_B(value). Both
             indices are keyed pseudorandom permutations, fresh per run
             (``numbering``).
``RESULT``   P re-blinds B's tokens, intersects per cell, applies windows and
             last touch, multiplies the matched ciphertexts (homomorphic
             sums), adds the policy's noise, re-randomizes and sends per-cell
             counts and Enc(sums). B decrypts only these aggregates.

Values travel only as Paillier ciphertexts under B's key, fixed-point with
``VALUE_SCALE``. What each side learns is DESIGN.md §13's attribution row.

Modules: ``messages`` (the typed rounds), ``tokens`` (day-bound tokens and the
bulk joins), ``numbering`` (the anonymous numbers), ``brand`` and ``partner``
(the two state machines), ``noise`` (differential privacy), ``report`` (the
report arithmetic), ``inputs`` (parsing and hashing the parties' files),
``reference`` (the plaintext oracle, for checking only) and ``synth``
(synthetic data).
"""
