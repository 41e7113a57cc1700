"""The mlflow-aws Pulumi program: validated settings, then one module per concern.

`__main__.py` calls `settings.load_settings()` and `stack.build_stack()`; tests call
`StackSettings.from_mapping()` and `build_stack()` directly under Pulumi mocks.
"""
