"""How the client commands print what the gateway answers: one line per event or job, a job
with its upstream attempts, JSON lines with --json."""

from __future__ import annotations

from google.protobuf import json_format

from dispatcher.gateway.v1 import gateway_pb2 as pb

SERVICES = {s.removeprefix("SERVICE_").lower(): v for s, v in pb.Service.items() if v}
STATES = {v: s.removeprefix("JOB_STATE_").lower() for s, v in pb.JobState.items()}


def state_name(state: pb.JobState.ValueType) -> str:
    return STATES.get(state, "?")


def service_name(service: pb.Service.ValueType) -> str:
    return pb.Service.Name(service).removeprefix("SERVICE_").lower()


def mode_name(mode: pb.Mode.ValueType) -> str:
    return pb.Mode.Name(mode).removeprefix("MODE_").lower()


def json_line(message: object) -> str:
    return json_format.MessageToJson(message, indent=None)  # type: ignore[arg-type]


def event_line(event: pb.JobEvent) -> str:
    mark = "  (terminal)" if event.terminal else ""
    return f"{event.cursor:>8}  {event.job_id}  {event.type:<20} {state_name(event.state)}{mark}"


def print_event(event: pb.JobEvent, as_json: bool) -> None:
    print(json_line(event) if as_json else event_line(event), flush=True)


def job_line(job: pb.Job) -> str:
    """A job in a list."""
    return (
        f"{job.job_id}  {service_name(job.service):<9} {state_name(job.state):<11} {job.last_event}"
    )


def job_text(job: pb.Job) -> str:
    """A job and its upstream attempts, as an operator reads them (or sends them to support)."""
    service = "/".join(service_name(s) for s in (job.service, *job.chain))
    lines = [
        f"job        {job.job_id}",
        f"service    {service} ({mode_name(job.mode)})",
        f"state      {state_name(job.state)} (last event: {job.last_event or '-'})",
        f"dispatch   {job.dispatch_id or '-'}",
        f"created    {job.create_time.ToJsonString()}",
        f"updated    {job.update_time.ToJsonString()}",
    ]
    if job.HasField("error"):
        lines.append(f"error      {job.error.code}: {job.error.message}")
    if job.retry_of:
        lines.append(f"retry of   {job.retry_of}")
    if job.retried_by:
        lines.append(f"retried by {job.retried_by}")
    lines.append(f"attempts   {len(job.attempts)}")
    for n, a in enumerate(job.attempts, 1):
        status = str(a.http_status) if a.http_status else "-"
        latency = a.latency.ToTimedelta().total_seconds() * 1000
        lines.append(
            f"  {n:>2}  {a.attempt_time.ToJsonString()}  {a.endpoint:<22} {mode_name(a.mode):<5} "
            f"{status:>3}  {latency:8.1f} ms  request {a.request_id}  {a.error_code}".rstrip()
        )
    return "\n".join(lines)


def template_line(template: pb.TemplateInfo) -> str:
    return f"{template.id:>4}  {template.name}  ({', '.join(template.services)})"
