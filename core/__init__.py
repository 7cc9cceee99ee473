"""The vocabulary every part of BioPilot imports: event schemas, the wire codec, event time, settings and the
embedded services. It imports none of the other folders (tests/test_layering.py)."""
