"""The toy attention as a plugin: naming this module in ETNAS_OPERATORS registers it."""
from search_space.operators import register
from tests.toy_operator import MEANMIX

register(MEANMIX)
