"""Pictures and reports: heat-map overlays, panels, HTML report, plots."""
