"""The Stripe side: reads (retries, rate limits), the writes support confirms, endpoint
setup, the configuration doctor, thin events."""
