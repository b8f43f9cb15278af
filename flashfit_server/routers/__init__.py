"""HTTP routers: health/ready/metrics, items, fusion, admin."""
