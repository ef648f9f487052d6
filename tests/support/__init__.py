"""What the tests and the bench scripts share, one job per module; no test module imports another.

- ``ports``: a free loopback port.
- ``redis_servers``: private ``redis-server`` processes (one server, a Cluster, Sentinel topologies).
- ``processes``: the proxy as a real process (``python -m proxy``) and an app served on a fixed port.
- ``proxies``: the proxy in-process under aiohttp's test server (``Proxy``), and the client key the tests use.
- ``clock``: a wall clock the test moves by hand.
- ``waiting``: waits on a condition with a deadline (never a timing assertion).
- ``load``: steady, checked load on a proxy process (chaos, topologies, replicas).
- ``live``: a live proxy for synchronous tests (hypothesis, schemathesis).
- ``samples``: Label Studio annotation bodies; ``webhooks``: Label Studio webhook payloads; ``jwt``: tokens.
- ``lookup``: a cache policy and upstream replies for tests of the lookup on its own.
- ``moments``: hypothesis strategies for moments and offsets (``created_ago``).
- ``django_oracle``: Django's own ``timesince``, the reference for ``created_ago``.
- ``metrics_text``: the ``/metrics`` text format as a dictionary.
- ``prometheus``: a real Prometheus scraping a proxy.
- ``deploy_files``: the deployment files (compose, Kubernetes, Prometheus rules, dashboards), loaded.
- ``image``: the container image, built and run.

The fakes (a Label Studio, a scripted upstream) are in ``tests.fakes``.
"""
