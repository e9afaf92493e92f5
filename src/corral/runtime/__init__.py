"""Sandboxes for agents: one per agent, labelled by tenant, with one channel out.

The protocol is :mod:`corral.runtime.sandbox`; backends are ``bwrap`` (namespaces), ``gvisor``
and ``firecracker`` (vm); the host daemon and the channel relay are ``host`` and ``channel``.
See ``docs/runtime.md``.
"""
