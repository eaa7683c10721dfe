"""Simulators: sky model, image-level instrument (training), event-level PPS (tests, demo)."""
