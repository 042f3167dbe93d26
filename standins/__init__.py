"""Stand-ins for Stripe, for the demo, the tests and the benchmarks: localstripe in a
process of its own and signed Stripe-shaped payloads. Not part of the shipped package."""
