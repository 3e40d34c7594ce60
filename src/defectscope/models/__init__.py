"""Anomaly models: feature maps in, anomaly maps at feature resolution out."""
