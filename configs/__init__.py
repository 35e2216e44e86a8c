"""The YAML recipes read by `zoo fit`, installed as the data package ``zoo.configs``."""
