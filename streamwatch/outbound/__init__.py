"""What leaves the process for other systems: signed webhooks (:mod:`.webhooks`, durable outbox in
:mod:`.outbox`, signatures in :mod:`.signing`), MQTT (:mod:`.mqtt`), and actions on the stream (cut,
warn, HTTP actions: :mod:`.actions`, :mod:`.actions_http`).

Each integration subscribes to the event bus as a listener (committed events only, in id order) and
never blocks it; :mod:`.wiring` starts and stops webhooks and MQTT for the daemon.
"""
