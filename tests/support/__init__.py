"""What the tests share, so that no test module imports another (see conftest.py for the list)."""
