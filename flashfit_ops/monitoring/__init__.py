"""Monitoring that runs beside the stack: Prometheus, Alertmanager and (when its image is here)
Grafana as long-lived containers, the scrape targets file that follows every switch, the
Prometheus API as doctor and status read it, and the promtool tests of the alert rules."""
