"""Cluster mode on NATS JetStream: the control plane (connection, names, assignment, leases,
desired streams, membership and the per-stream state a new owner carries on).

Each module is small and typed; only these modules import ``nats`` (the single box never does).

One worker round, every ``renew_s`` (the cluster worker wires it)::

    costs = load_keeper.costs(cpu spent per stream, held, now)   # load.py: measured CPU s per stream-second
    members.put(me, capacity=…, streams=held, budget=…, costs=costs, handed=…)   # members.py
    lease = await leases.renew(lease) for each held stream      # LeaseLost: stop that stream now
    desired = await desired_streams.all(); holders = await leases.holders(); live = await members.live()
    ages = unleased_clock.observe(desired.keys() - holders.keys(), time.monotonic())
    p = assign.plan(set(desired), {s: h.worker for s, h in holders.items()}, live, me, unleased_for=ages, grace_s=…)
        # or placement.plan_by_cost(…) once every worker publishes a budget (cluster.placement = "cost")
    release p.release (stop, carry.save(force=True), leases.release); claim p.claim (leases.claim,
    carry.load → resume the session, RuleEngine.import_cooldowns, report the monitoring gap)

A listing (``all``/``holders``/``live``) makes a short-lived consumer, which needs the JetStream
meta leader: it can fail for a few seconds after a node crash. Skip planning that round, but keep
renewing (renewals only need the bucket's stream leader).
"""
