"""Lookalike expansion: an exact federated logistic regression from one encrypted
aggregation, over a PSI that hides the seed (DESIGN.md §7, §13).

The brand B holds an audience with 0/1 seed labels; the partner P holds
identifiers and features for its whole user base. One job:

1. ``LookalikeHello`` (P): the audience, the mode, how many rows P offers
   (its users with an identifier), identifier slots per row, the feature
   count ``d``, tiers, holdout share. B checks them against its policy and
   answers ``LookalikeAccepted`` with a fresh Paillier key for the job.
2. Exchange. P streams every offered row as ``slots`` points ``H(x)^p``
   (rows and slots shuffled, random dummy points for missing identifiers);
   B re-blinds them to ``H(x)^pb`` and keeps them in P's order. B sends its
   identifiers as two lists, seeds and the others, each padded with dummy
   points to one size and shuffled, as ``H(s)^b``; P re-blinds each list to
   ``H(s)^bp``, shuffles it and sends it back. B now knows, per position of
   P's shuffled rows, whether it matched a seed, another customer, or
   nothing, and nothing that links a position to a person on either side.
3. Labels. B refuses when fewer seeds matched than its policy's minimum;
   otherwise it sends ``Enc(y)`` for every position (``hidden-seed``: fresh
   encryptions of 1 for seeds and 0 for every other row, so P cannot tell a
   customer from a non-customer) or, in ``matched`` mode, the match flags and
   ``Enc(y)`` for the matched positions only.

   A ``matched`` job may match first (``LookalikeHello.match_first``): once B
   accepted it, P finds its matches by the OT-extension PSI (``partner match``,
   which tells P exactly that), says how many rows it exchanges
   (``ExchangedRows``) and streams the slots of those rows only. B compares them
   itself, so its flags, counts and minimum are its own; every row not
   exchanged is a known negative, as an unmatched one is, and steps 4-6 run over
   every offered row as before. B learns in addition the number of rows
   exchanged, which for an honest partner is the intersection it counts. When
   the match is refused (B's policy or quota), P exchanges every row.
4. Sums. P sets a random holdout aside and computes ``Enc(T_j) =
   Π Enc(y_i)^{x_ij}`` (``T = Xᵀy``) and ``Enc(Σy)`` over the training rows,
   adds a random mask with 40 bits of slack to each (a fresh encryption of
   the mask), and sends the ``d + 1`` ciphertexts. B decrypts exactly those
   (it refuses more) and returns the masked values. P removes its masks and
   fits the exact L2-regularized logistic regression, which needs the labels
   only through ``T`` and ``Σy``.
5. Metrics. P scores the holdout and sends three kinds of encrypted sums
   over it, re-randomized: its seeds, twice their Mann-Whitney rank sum, and
   its seeds in each top tier. B decrypts them into AUC, recall and lift per
   tier, and tells P.
6. Package. P scores its whole base, writes nested tiers of its own user
   ids, and reports their sizes; B stores the package's metadata (sizes,
   metrics, mode) and ends with ``LookalikeDone``.

What each side learns is stated in DESIGN.md §13; ``brand`` and ``partner``
are the two state machines, ``features`` P's feature pipeline, ``model`` the
fit, ``aggregates`` the homomorphic sums.
"""
