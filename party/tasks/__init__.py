"""Handler modules: every TaskBase subclass defined in a module of this package is registered."""
