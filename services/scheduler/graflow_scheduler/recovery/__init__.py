"""What repairs a crash between two steps: the recovery sweep dispatches READY nodes again, and
keeps the results of live runs from expiring (keepalive)."""
