"""Host metrics: snapshots of the Pi (and any other host), their daily rollup and checks."""
