pytest_plugins = ["graflow_testing.plugin"]
