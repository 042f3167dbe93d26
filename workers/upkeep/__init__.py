"""The operator's tools: the sweeper, catching up with Stripe (replay, reconcile,
diagnose), retention."""
