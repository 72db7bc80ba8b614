"""Tests of the workers, engines and evaluators (worker/)."""
