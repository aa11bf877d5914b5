"""A durable ledger of deletion requests, served by lazy or chained unlearning, in SQLite.

:class:`RequestLedger` keeps q(θ|D), every deletion request, every unlearning that served them
(method, λ, seconds, the trust verdict) and the current posterior in one SQLite file (the
standard library's ``sqlite3``): each change is one transaction, so a failed or killed process
leaves the previous state, and several processes may file requests at once. The ``lazy``
policy unlearns the union of all requests since the last retraining from q(θ|D) (Nguyen et al.
2020), keeping the erased rows until a retraining is recorded; the ``chained`` policy unlearns
each new request from the previous posterior and keeps no rows. ``pyro-unlearn ledger PATH``
(:mod:`pyro_unlearn.ledger.cli`) prints the audit trail.

References:
    Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.
"""

from .ledger import POLICIES, RequestLedger
from .schema import SCHEMA_VERSION
from .serve import ServeRecord
from .store import CorruptLedgerError, LedgerError

__all__ = [
    "POLICIES",
    "SCHEMA_VERSION",
    "CorruptLedgerError",
    "LedgerError",
    "RequestLedger",
    "ServeRecord",
]
