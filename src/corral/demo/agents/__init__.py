"""The demo's agents: one script per role, each run in its own sandbox by ``corral host``.

Each is an entry ``corral.demo.agents.<role>:main`` handed one argument, the job as JSON
(``{"agent", "seed", "world"}``). It draws its day from :func:`corral.demo.clinic.plan_day`,
asks for a delegation for each of its tools, then at each step's simulated time does the step
through :mod:`corral.guest` (whose SDK presents the delegation on every call and renews it),
reacting to what the supervisor says as a person at the front desk would.
:mod:`corral.demo.agents.load` is the end-to-end benchmark's agent. Standard library and
:mod:`corral.guest` only.
"""
