"""Privacy audits of real runs: canaries planned with secret coins, a federation that trains on them, the scores
and the measured lower bound on epsilon beside the accountant's (``dpfl audit``)."""
