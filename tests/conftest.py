"""Test-suite wide setup: the test-support package tests/testlib is importable (as `testlib`) from every
test directory."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
