"""Fast tests of decision logic: no server, no worker process."""
