"""The HTTP server of Party: route table (``app``), handlers, wire shape and listening sockets.

The only package that imports tornado (besides the lazily imported ``serve`` and ``up`` commands
of ``cli``). ``import party.server`` itself stays light; import ``party.server.app`` or
``party.server.listen`` for the parts.
"""
