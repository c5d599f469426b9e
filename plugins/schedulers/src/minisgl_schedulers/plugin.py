from minisgl.hookspecs import hookimpl
from minisgl.specs import DispatchPolicySpec, QueuePolicySpec


@hookimpl
def minisgl_register_schedulers(register):
    register(QueuePolicySpec(
        name="lpm",
        description="longest prefix match first: requests that reuse the most cache run first",
        factory="minisgl_schedulers.queue:LongestPrefixMatch",
    ))
    register(QueuePolicySpec(
        name="priority",
        description="higher request priority first, then arrival order",
        factory="minisgl_schedulers.queue:Priority",
    ))
    register(DispatchPolicySpec(
        name="fsfs",
        description="first slot first served: the first replica with free capacity",
        factory="minisgl_schedulers.dispatch:FirstFree",
    ))
    register(DispatchPolicySpec(
        name="random",
        description="a uniformly random healthy replica",
        factory="minisgl_schedulers.dispatch:Random",
    ))
    register(DispatchPolicySpec(
        name="cache_aware",
        description="the replica whose radix cache holds the longest prefix, weighed against load",
        factory="minisgl_schedulers.dispatch:CacheAware",
    ))
