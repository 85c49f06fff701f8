"""The domain: types and naming rules (model), and what the IOC needs of the outside world (ports)."""
