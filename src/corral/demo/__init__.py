"""``corral demo``: a dental clinic's day, run end to end on this machine (``docs/demo.md``).

Bright Smile Dental connects its six accounts (the local provider sandboxes of
:mod:`corral.fakes`, served over real HTTP) through the broker, and four agents — receptionist,
booking, billing, follow-up — each in its own sandbox run by ``corral host``, work through a day
of patients in accelerated time. Every call goes the real way: guest SDK → channel → host →
control (supervisor, audit chain) → broker → provider, and the conflicts between the agents
(a double booking, a duplicate reminder, a double refund, a text in quiet hours, a text to a
patient who opted out, refunds the owner must approve) are decided by the supervisor's rules.

- :mod:`corral.demo.clinic`: the clinic, its policy and the day's plan from a seed (standard
  library only: agents import it inside their sandboxes);
- :mod:`corral.demo.agents`: the agents' scripts;
- :mod:`corral.demo.providers`: the six provider sandboxes on a loopback port, seeded;
- :mod:`corral.demo.control`: ``corral control`` on the demo's accelerated clock;
- :mod:`corral.demo.run`: the whole run; :mod:`corral.demo.summary`: what it prints.

Nothing runs at import.
"""
