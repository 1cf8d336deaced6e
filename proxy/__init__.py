"""kstats-proxy: fill the holes legacy Kaltura players leave in statistics events.

The package is laid out along the way one event travels:

- ``proxy.kaltura``: the wire protocol (event forms, parameter codecs, KS);
- ``proxy.rules``: the rules language (model, loading, sources);
- ``proxy.enrich``: matching rules and resolving and applying values;
- ``proxy.upstream``: sending events and streaming everything else;
- ``proxy.app`` and ``proxy.cli``: assembly and commands.
"""

__version__ = "0.1.0"
