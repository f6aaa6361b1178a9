"""Worker lifetimes: the scheduler decides, the runner owns each worker process."""
