"""`make bench`: ollmlx side by side with in-process mlx_lm and mlx_lm.server."""
