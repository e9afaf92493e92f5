"""The wording of :mod:`corral.audit.prose`: one table per language.

Kept apart from the renderer so that a translator reads only sentences, and a third language is
one more table here (and one more entry in :data:`WORDING`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

Table: TypeAlias = Mapping[str, str | tuple[str, ...]]

# ------------------------------------------------------------------------------- wording
# One table per language; a third language is one more table. A value is a template or a
# tuple of variants (the first whose placeholders are all known facts wins; the last needs
# none). "tool.<name>.do/did", "rule.<id>" and "refund.<reason>" are looked up by catalog tool
# name (TOOLS.md), rule id (SUPERVISOR.md) and Stripe refund reason. Fragments that may be
# empty ("{when}", "{refs}", "{erased}", ...) carry their own leading space or punctuation.
# fmt: off
EN: Table = {
    "date": "MMMEd", "date.year": "yMMMEd", "due": "medium", "zone": "z",
    "time.zone": "{time} {zone}", "quote": "“{text}”", "stop.quotes": "”",
    "line": "{when} — {sentence}", "unknown_time": "Unknown time",
    "at.time": " at {time}", "at.date": " on {date} at {time}",
    "until.time": " until {time}", "until.date": " until {date} at {time}",
    "more": "{count} more", "calls.one": "call {ids}", "calls.other": "calls {ids}",
    "waits.one": ", waiting for call {ids}", "waits.other": ", waiting for calls {ids}",
    "refs": " ({calls})", "event": " (event {text})", "detail": " ({text})",
    "erased": " [details erased on request]", "call_tag": "[call {id}]",
    "contact": "contact {id}", "escalation": " (approval request {text})",
    "reason": " Reason: {text}.", "exit": " (exit code {text})", "isolation": ", {text}",
    "actor.agent": ("The {role} agent ({id})", "Agent {id}"),
    "actor.agent.obj": ("the {role} agent ({id})", "agent {id}"),
    "actor.operator": "Operator {id}", "actor.operator.obj": "operator {id}",
    "actor.broker": "The credential broker", "actor.broker.obj": "the credential broker",
    "actor.host": "The agent host", "actor.host.obj": "the agent host",
    "actor.supervisor": "The supervisor", "actor.supervisor.obj": "the supervisor",
    "actor.system": "The system", "actor.system.obj": "the system",
    "story.ask": "{actor} asked to {phrase}{erased}",
    "story.did": "{actor} {phrase}{erased}",
    "story.ok": "Done{when}{event}.",
    "story.unknown": "No answer from the provider{when}; it may or may not have happened.",
    "story.failed": "Failed{when}: {error}{detail}.",
    "story.approve": "{actor} approved the request{when}.",
    "story.reject": "{actor} rejected the request{when}.",
    "alone.verdict": "{actor} reviewed a request to {phrase}.",
    "alone.ok": "A request to {phrase} was carried out{event}.",
    "alone.unknown": "A request to {phrase} got no answer from the provider; it may or may not "
                     "have happened.",
    "alone.failed": "A request to {phrase} failed: {error}{detail}.",
    "alone.approve": "{actor} approved a request that was waiting for approval{escalation}.",
    "alone.reject": "{actor} rejected a request that was waiting for approval{escalation}.",
    "verdict.allow": ("Allowed{when}: {reasons}{refs}.", "Allowed{when}; no conflicts."),
    "verdict.allow.noted": "Allowed{when}.",
    "verdict.deny": ("Denied{when}: {reasons}{refs}.", "Denied{when}{refs}."),
    "verdict.defer": ("Deferred{when}{until}{waits}: {reasons}{refs}.",
                      "Deferred{when}{until}{waits}{refs}."),
    "verdict.escalate": ("Sent to you for approval{when}: {reasons}{refs}.",
                         "Sent to you for approval{when}{refs}."),
    "verdict.observed": "Noted but not enforced: {reasons}.",
    "rule.role": "the agent's role does not allow this tool",
    "rule.opted_out": ("{recipient} has opted out of messages",
                       "the recipient has opted out of messages"),
    "rule.quiet_hours": "it falls within your quiet hours",
    "rule.duplicate_message": ("{recipient} already got the same message recently",
                               "the recipient already got the same message recently"),
    "rule.recipient_daily_max": ("{recipient} already got the most messages allowed in a day",
                                 "the recipient already got the most messages allowed in a day"),
    "rule.slot_conflict": "the time overlaps another booking on the same calendar",
    "rule.duplicate_cancel": "this event already has a cancellation",
    "rule.duplicate_refund": ("{money} was already refunded on payment {payment_intent} in the "
                              "last 24 hours", "the same refund was already made in the last 24 "
                              "hours"),
    "rule.refund_above_threshold": ("the refund of {money} is above your approval limit",
                                    "the refund is above your approval limit"),
    "rule.refund_daily_cap": "your daily refund limit would be exceeded",
    "rule.duplicate_charge": ("customer {customer} was already charged {money} in the last 24 "
                              "hours", "the same charge was already made in the last 24 hours"),
    "rule.duplicate_invoice": ("an invoice for the same total was already created for customer "
                               "{customer_id} in the last 24 hours", "an invoice for the same "
                               "total was already created for this customer in the last 24 hours"),
    "rule.unknown_outcome": "an earlier related action has an unknown result",
    "rule.retry_storm": "the agent already tried this exact action 3 or more times in the last "
                        "minute and it failed each time",
    "rule.unknown_tool": "this tool is not in the catalog",
    "rule.invalid_arguments": "the request's details are not valid for this tool",
    "rule.other": "rule {rule}",
    "refund.duplicate": "duplicate charge", "refund.fraudulent": "fraudulent charge",
    "refund.requested_by_customer": "requested by the customer",
    "tool.twilio.send_sms.do": ("text {to}: {body}", "text {to}", "send a text: {body}",
                                "send a text"),
    "tool.twilio.send_sms.did": ("texted {to}: {body}", "texted {to}", "sent a text: {body}",
                                 "sent a text"),
    "tool.ghl.send_message.do": ("text contact {sms_contact}: {message}",
                                 "email contact {email_contact}: {message}",
                                 "message contact {contact_id}: {message}",
                                 "message contact {contact_id}", "send a message"),
    "tool.ghl.send_message.did": ("texted contact {sms_contact}: {message}",
                                  "emailed contact {email_contact}: {message}",
                                  "messaged contact {contact_id}: {message}",
                                  "messaged contact {contact_id}", "sent a message"),
    "tool.ghl.upsert_contact.do": ("save the contact details of {name}",
                                   "save the contact details of {phone}",
                                   "save the contact details of {email}",
                                   "save a contact's details"),
    "tool.ghl.upsert_contact.did": ("saved the contact details of {name}",
                                    "saved the contact details of {phone}",
                                    "saved the contact details of {email}",
                                    "saved a contact's details"),
    "tool.ghl.book_appointment.do": (
        "book {title} with contact {contact_id} on calendar {calendar_id} for {span}",
        "book an appointment with contact {contact_id} on calendar {calendar_id} for {span}",
        "book an appointment on calendar {calendar_id} for {span}", "book an appointment"),
    "tool.ghl.book_appointment.did": (
        "booked {title} with contact {contact_id} on calendar {calendar_id} for {span}",
        "booked an appointment with contact {contact_id} on calendar {calendar_id} for {span}",
        "booked an appointment on calendar {calendar_id} for {span}", "booked an appointment"),
    "tool.google_calendar.insert_event.do": (
        "book {summary} on calendar {calendar_id} for {span}, inviting {attendees}",
        "book {summary} on calendar {calendar_id} for {span}",
        "book an event on calendar {calendar_id} for {span}", "book a calendar event"),
    "tool.google_calendar.insert_event.did": (
        "booked {summary} on calendar {calendar_id} for {span}, inviting {attendees}",
        "booked {summary} on calendar {calendar_id} for {span}",
        "booked an event on calendar {calendar_id} for {span}", "booked a calendar event"),
    "tool.google_calendar.delete_event.do": ("cancel event {event_id} on calendar {calendar_id}",
                                             "cancel a calendar event"),
    "tool.google_calendar.delete_event.did": (
        "cancelled event {event_id} on calendar {calendar_id}", "cancelled a calendar event"),
    "tool.google_calendar.list_events.do": ("check calendar {calendar_id} ({range})",
                                            "check calendar {calendar_id}", "check a calendar"),
    "tool.google_calendar.list_events.did": ("checked calendar {calendar_id} ({range})",
                                             "checked calendar {calendar_id}",
                                             "checked a calendar"),
    "tool.calendly.book.do": ("book a Calendly meeting with {invitee} for {span}",
                              "book a Calendly meeting for {span}", "book a Calendly meeting"),
    "tool.calendly.book.did": ("booked a Calendly meeting with {invitee} for {span}",
                               "booked a Calendly meeting for {span}",
                               "booked a Calendly meeting"),
    "tool.calendly.cancel_event.do": ("cancel Calendly event {event_uuid} (reason: {reason})",
                                      "cancel Calendly event {event_uuid}",
                                      "cancel a Calendly event"),
    "tool.calendly.cancel_event.did": ("cancelled Calendly event {event_uuid} (reason: {reason})",
                                       "cancelled Calendly event {event_uuid}",
                                       "cancelled a Calendly event"),
    "tool.stripe.create_refund.do": (
        "refund {money} on payment {payment_intent} ({refund_reason})",
        "refund {money} on payment {payment_intent}", "refund {money}", "make a refund"),
    "tool.stripe.create_refund.did": (
        "refunded {money} on payment {payment_intent} ({refund_reason})",
        "refunded {money} on payment {payment_intent}", "refunded {money}", "made a refund"),
    "tool.stripe.create_payment_intent.do": (
        "charge customer {customer} {money} for {description}", "charge {money} for "
        "{description}", "charge customer {customer} {money}", "charge {money}",
        "create a charge"),
    "tool.stripe.create_payment_intent.did": (
        "charged customer {customer} {money} for {description}", "charged {money} for "
        "{description}", "charged customer {customer} {money}", "charged {money}",
        "created a charge"),
    "tool.quickbooks.create_invoice.do": (
        "create an invoice for customer {customer_id} totaling {total}, due {due}",
        "create an invoice for customer {customer_id} totaling {total}",
        "create an invoice for customer {customer_id}", "create an invoice"),
    "tool.quickbooks.create_invoice.did": (
        "created an invoice for customer {customer_id} totaling {total}, due {due}",
        "created an invoice for customer {customer_id} totaling {total}",
        "created an invoice for customer {customer_id}", "created an invoice"),
    "tool.other.do": "use the tool {tool}", "tool.other.did": "used the tool {tool}",
    "delegation": ("{actor} gave agent {agent} permission to use {tools}{until} (delegation {id}).",
                   "{actor} issued delegation {id} to agent {agent}{until}."),
    "cred.connected": "{actor} connected your {provider} account (connection {id}).{reason}",
    "cred.rotated": "{actor} renewed the saved access to your {provider} account "
                    "(connection {id}).{reason}",
    "cred.revoked": "{actor} disconnected your {provider} account (connection {id}).{reason}",
    "template.manual": "{actor} switched on version {version} of the agent setup {template} "
                       "(activation {id}).",
    "template.auto": "{actor} automatically applied version {version} of the agent setup "
                     "{template} (activation {id}).",
    "template.deprecated": "{actor} gave notice that version {version} of the agent setup "
                           "{template} is deprecated (activation {id}).{newest}",
    "template.sunsetting": ("{actor} gave notice that version {version} of the agent setup "
                            "{template} will be retired on {date} (activation {id}).{newest}",
                            "{actor} gave notice that version {version} of the agent setup "
                            "{template} will be retired soon (activation {id}).{newest}"),
    "template.sunset": ("{actor} gave notice that version {version} of the agent setup "
                        "{template} was retired on {date} and can no longer be switched on "
                        "(activation {id}).{newest}",
                        "{actor} gave notice that version {version} of the agent setup "
                        "{template} was retired and can no longer be switched on (activation "
                        "{id}).{newest}"),
    "newest": " The newest version is {text}.",
    "sandbox.started": "{actor} started agent {agent} in sandbox {id} ({backend}{isolation}).",
    "sandbox.stopped": "{actor} stopped agent {agent}'s sandbox {id}{exit}.{reason}",
    "unknown": ("Something of kind {kind} was recorded by {actor_obj}; this version of corral "
                "cannot describe it.", "Something of kind {kind} was recorded; this version of "
                "corral cannot describe it."),
    "fallback": "Something of kind {kind} was recorded; its details could not be shown.",
}

ES: Table = {
    "date": "MMMMEd", "date.year": "yMMMMEd", "due": "long", "zone": "zzzz",
    "time.zone": "{time} ({zone})", "quote": "«{text}»",
    "stop.quotes": "»",  # «¿Vienes?» ends the sentence: no "«¿Vienes?»."
    "line": "{when} — {sentence}", "unknown_time": "Hora desconocida",
    "at.time": " a las {time}", "at.time.h1": " a la {time}",  # "a la 1:30", "a las 2:30"
    "at.date": " el {date}, a las {time}", "at.date.h1": " el {date}, a la {time}",
    "until.time": " hasta las {time}", "until.time.h1": " hasta la {time}",
    "until.date": " hasta el {date}, a las {time}",
    "until.date.h1": " hasta el {date}, a la {time}",
    "more": "{count} más", "calls.one": "acción {ids}", "calls.other": "acciones {ids}",
    "waits.one": ", en espera de la acción {ids}",
    "waits.other": ", en espera de las acciones {ids}",
    "refs": " ({calls})", "event": " (evento {text})", "detail": " ({text})",
    "erased": " [datos borrados a petición]", "call_tag": "[acción {id}]",
    "contact": "el contacto {id}", "escalation": " (solicitud de aprobación {text})",
    "reason": " Motivo: {text}.", "exit": " (código de salida {text})", "isolation": ", {text}",
    "actor.agent": ("El agente {role} ({id})", "El agente {id}"),
    "actor.agent.obj": ("el agente {role} ({id})", "el agente {id}"),
    "actor.operator": "El operador {id}", "actor.operator.obj": "el operador {id}",
    "actor.broker": "El gestor de credenciales", "actor.broker.obj": "el gestor de credenciales",
    "actor.host": "El servidor de agentes", "actor.host.obj": "el servidor de agentes",
    "actor.supervisor": "El supervisor", "actor.supervisor.obj": "el supervisor",
    "actor.system": "El sistema", "actor.system.obj": "el sistema",
    "story.ask": "{actor} pidió {phrase}{erased}",
    "story.did": "{actor} {phrase}{erased}",
    "story.ok": "Completado{when}{event}.",
    "story.unknown": "Sin respuesta del proveedor{when}; puede que se haya hecho o no.",
    "story.failed": "Falló{when}: {error}{detail}.",
    "story.approve": "{actor} aprobó la solicitud{when}.",
    "story.reject": "{actor} rechazó la solicitud{when}.",
    "alone.verdict": "{actor} revisó una solicitud para {phrase}.",
    "alone.ok": "Se completó una solicitud para {phrase}{event}.",
    "alone.unknown": "Una solicitud para {phrase} no obtuvo respuesta del proveedor; puede que "
                     "se haya hecho o no.",
    "alone.failed": "Falló una solicitud para {phrase}: {error}{detail}.",
    "alone.approve": "{actor} aprobó una solicitud que esperaba aprobación{escalation}.",
    "alone.reject": "{actor} rechazó una solicitud que esperaba aprobación{escalation}.",
    "verdict.allow": ("Permitido{when}: {reasons}{refs}.", "Permitido{when}; sin conflictos."),
    "verdict.allow.noted": "Permitido{when}.",
    "verdict.deny": ("Denegado{when}: {reasons}{refs}.", "Denegado{when}{refs}."),
    "verdict.defer": ("Aplazado{when}{until}{waits}: {reasons}{refs}.",
                      "Aplazado{when}{until}{waits}{refs}."),
    "verdict.escalate": ("Enviado para su aprobación{when}: {reasons}{refs}.",
                         "Enviado para su aprobación{when}{refs}."),
    "verdict.observed": "Anotado sin aplicar: {reasons}.",
    "rule.role": "el rol del agente no le permite usar esta herramienta",
    "rule.opted_out": ("{recipient} pidió no recibir mensajes",
                       "el destinatario pidió no recibir mensajes"),
    "rule.quiet_hours": "está dentro de su horario de silencio",
    "rule.duplicate_message": ("{recipient} ya recibió el mismo mensaje hace poco",
                               "el destinatario ya recibió el mismo mensaje hace poco"),
    "rule.recipient_daily_max": ("{recipient} ya recibió el máximo de mensajes permitido en un "
                                 "día", "el destinatario ya recibió el máximo de mensajes "
                                 "permitido en un día"),
    "rule.slot_conflict": "el horario se superpone con otra reserva del mismo calendario",
    "rule.duplicate_cancel": "este evento ya tiene una cancelación",
    "rule.duplicate_refund": ("ya hubo un reembolso de {money} del pago {payment_intent} en las "
                              "últimas 24 horas", "ya se hizo el mismo reembolso en las últimas "
                              "24 horas"),
    "rule.refund_above_threshold": ("el reembolso de {money} supera su límite de aprobación",
                                    "el reembolso supera su límite de aprobación"),
    "rule.refund_daily_cap": "se superaría su límite diario de reembolsos",
    "rule.duplicate_charge": ("ya hubo un cobro de {money} al cliente {customer} en las últimas "
                              "24 horas", "ya se hizo el mismo cobro en las últimas 24 horas"),
    "rule.duplicate_invoice": ("ya se creó una factura por el mismo total para el cliente "
                               "{customer_id} en las últimas 24 horas", "ya se creó una factura "
                               "por el mismo total para este cliente en las últimas 24 horas"),
    "rule.unknown_outcome": "aún no se conoce el resultado de una acción anterior relacionada",
    "rule.retry_storm": "el agente ya intentó esta misma acción 3 o más veces en el último "
                        "minuto y falló todas las veces",
    "rule.unknown_tool": "esta herramienta no está en el catálogo",
    "rule.invalid_arguments": "los datos de la solicitud no son válidos para esta herramienta",
    "rule.other": "regla {rule}",
    "refund.duplicate": "cargo duplicado", "refund.fraudulent": "cargo fraudulento",
    "refund.requested_by_customer": "a petición del cliente",
    "tool.twilio.send_sms.do": ("enviar un SMS a {to}: {body}", "enviar un SMS a {to}",
                                "enviar un SMS: {body}", "enviar un SMS"),
    "tool.twilio.send_sms.did": ("envió un SMS a {to}: {body}", "envió un SMS a {to}",
                                 "envió un SMS: {body}", "envió un SMS"),
    "tool.ghl.send_message.do": ("enviar un SMS al contacto {sms_contact}: {message}",
                                 "enviar un correo al contacto {email_contact}: {message}",
                                 "enviar un mensaje al contacto {contact_id}: {message}",
                                 "enviar un mensaje al contacto {contact_id}", "enviar un mensaje"),
    "tool.ghl.send_message.did": ("envió un SMS al contacto {sms_contact}: {message}",
                                  "envió un correo al contacto {email_contact}: {message}",
                                  "envió un mensaje al contacto {contact_id}: {message}",
                                  "envió un mensaje al contacto {contact_id}", "envió un mensaje"),
    "tool.ghl.upsert_contact.do": ("guardar los datos de contacto de {name}",
                                   "guardar los datos de contacto de {phone}",
                                   "guardar los datos de contacto de {email}",
                                   "guardar los datos de un contacto"),
    "tool.ghl.upsert_contact.did": ("guardó los datos de contacto de {name}",
                                    "guardó los datos de contacto de {phone}",
                                    "guardó los datos de contacto de {email}",
                                    "guardó los datos de un contacto"),
    "tool.ghl.book_appointment.do": (
        "reservar {title} con el contacto {contact_id} en el calendario {calendar_id} para el "
        "{span}", "reservar una cita con el contacto {contact_id} en el calendario {calendar_id} "
        "para el {span}", "reservar una cita en el calendario {calendar_id} para el {span}",
        "reservar una cita"),
    "tool.ghl.book_appointment.did": (
        "reservó {title} con el contacto {contact_id} en el calendario {calendar_id} para el "
        "{span}", "reservó una cita con el contacto {contact_id} en el calendario {calendar_id} "
        "para el {span}", "reservó una cita en el calendario {calendar_id} para el {span}",
        "reservó una cita"),
    "tool.google_calendar.insert_event.do": (
        "reservar {summary} en el calendario {calendar_id} para el {span} e invitar a {attendees}",
        "reservar {summary} en el calendario {calendar_id} para el {span}",
        "reservar un evento en el calendario {calendar_id} para el {span}",
        "reservar un evento de calendario"),
    "tool.google_calendar.insert_event.did": (
        "reservó {summary} en el calendario {calendar_id} para el {span} e invitó a {attendees}",
        "reservó {summary} en el calendario {calendar_id} para el {span}",
        "reservó un evento en el calendario {calendar_id} para el {span}",
        "reservó un evento de calendario"),
    "tool.google_calendar.delete_event.do": (
        "cancelar el evento {event_id} del calendario {calendar_id}",
        "cancelar un evento de calendario"),
    "tool.google_calendar.delete_event.did": (
        "canceló el evento {event_id} del calendario {calendar_id}",
        "canceló un evento de calendario"),
    "tool.google_calendar.list_events.do": ("consultar el calendario {calendar_id} ({range})",
                                            "consultar el calendario {calendar_id}",
                                            "consultar un calendario"),
    "tool.google_calendar.list_events.did": ("consultó el calendario {calendar_id} ({range})",
                                             "consultó el calendario {calendar_id}",
                                             "consultó un calendario"),
    "tool.calendly.book.do": ("reservar una cita de Calendly con {invitee} para el {span}",
                              "reservar una cita de Calendly para el {span}",
                              "reservar una cita de Calendly"),
    "tool.calendly.book.did": ("reservó una cita de Calendly con {invitee} para el {span}",
                               "reservó una cita de Calendly para el {span}",
                               "reservó una cita de Calendly"),
    "tool.calendly.cancel_event.do": (
        "cancelar el evento de Calendly {event_uuid} (motivo: {reason})",
        "cancelar el evento de Calendly {event_uuid}", "cancelar un evento de Calendly"),
    "tool.calendly.cancel_event.did": (
        "canceló el evento de Calendly {event_uuid} (motivo: {reason})",
        "canceló el evento de Calendly {event_uuid}", "canceló un evento de Calendly"),
    "tool.stripe.create_refund.do": (
        "reembolsar {money} del pago {payment_intent} ({refund_reason})",
        "reembolsar {money} del pago {payment_intent}", "reembolsar {money}", "hacer un reembolso"),
    "tool.stripe.create_refund.did": (
        "reembolsó {money} del pago {payment_intent} ({refund_reason})",
        "reembolsó {money} del pago {payment_intent}", "reembolsó {money}", "hizo un reembolso"),
    "tool.stripe.create_payment_intent.do": (
        "cobrar {money} al cliente {customer} por {description}", "cobrar {money} por "
        "{description}", "cobrar {money} al cliente {customer}", "cobrar {money}",
        "crear un cobro"),
    "tool.stripe.create_payment_intent.did": (
        "cobró {money} al cliente {customer} por {description}", "cobró {money} por "
        "{description}", "cobró {money} al cliente {customer}", "cobró {money}", "creó un cobro"),
    "tool.quickbooks.create_invoice.do": (
        "crear una factura para el cliente {customer_id} por un total de {total}, con "
        "vencimiento el {due}", "crear una factura para el cliente {customer_id} por un total "
        "de {total}", "crear una factura para el cliente {customer_id}", "crear una factura"),
    "tool.quickbooks.create_invoice.did": (
        "creó una factura para el cliente {customer_id} por un total de {total}, con "
        "vencimiento el {due}", "creó una factura para el cliente {customer_id} por un total "
        "de {total}", "creó una factura para el cliente {customer_id}", "creó una factura"),
    "tool.other.do": "usar la herramienta {tool}", "tool.other.did": "usó la herramienta {tool}",
    "delegation": ("{actor} dio al agente {agent} permiso para usar {tools}{until} (delegación "
                   "{id}).", "{actor} emitió la delegación {id} para el agente {agent}{until}."),
    "cred.connected": "{actor} conectó su cuenta de {provider} (conexión {id}).{reason}",
    "cred.rotated": "{actor} renovó el acceso guardado a su cuenta de {provider} "
                    "(conexión {id}).{reason}",
    "cred.revoked": "{actor} desconectó su cuenta de {provider} (conexión {id}).{reason}",
    "template.manual": "{actor} activó la versión {version} de la configuración de agente "
                       "{template} (activación {id}).",
    "template.auto": "{actor} aplicó automáticamente la versión {version} de la configuración "
                     "de agente {template} (activación {id}).",
    "template.deprecated": "{actor} avisó de que la versión {version} de la configuración de "
                           "agente {template} está obsoleta (activación {id}).{newest}",
    "template.sunsetting": ("{actor} avisó de que la versión {version} de la configuración de "
                            "agente {template} se retirará el {date} (activación {id}).{newest}",
                            "{actor} avisó de que la versión {version} de la configuración de "
                            "agente {template} se retirará pronto (activación {id}).{newest}"),
    "template.sunset": ("{actor} avisó de que la versión {version} de la configuración de "
                        "agente {template} se retiró el {date} y ya no puede activarse "
                        "(activación {id}).{newest}",
                        "{actor} avisó de que la versión {version} de la configuración de "
                        "agente {template} se retiró y ya no puede activarse (activación "
                        "{id}).{newest}"),
    "newest": " La versión más reciente es la {text}.",
    "sandbox.started": "{actor} inició el agente {agent} en el entorno aislado {id} "
                       "({backend}{isolation}).",
    "sandbox.stopped": "{actor} detuvo el entorno aislado {id} del agente {agent}{exit}.{reason}",
    "unknown": ("{actor} registró algo de tipo {kind}; esta versión de corral no sabe "
                "describirlo.", "Se registró algo de tipo {kind}; esta versión de corral no "
                "sabe describirlo."),
    "fallback": "Se registró algo de tipo {kind}; no se pudieron mostrar sus detalles.",
}
# fmt: on

WORDING: Mapping[str, Table] = {"en": EN, "es": ES}
