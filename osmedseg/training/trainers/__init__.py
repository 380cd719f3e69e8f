"""Method trainers, found by class name with ``osm_train -tr NAME``."""
