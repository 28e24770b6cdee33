"""A workload's blast radius drawn as an SVG: agent → workflows → tools → scopes.

Four columns of boxes joined by lines; a tool some unexpired, unrevoked credential was issued
for is drawn ``live`` (as are the lines to it and the agent, when it holds any). Every label
is escaped; a long one keeps its end, with the whole text in the box's ``<title>``. Styling
comes from the console's stylesheet (classes only: its policy allows no inline style).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from deputy.policy.blast_radius import BlastRadius

BOX_WIDTH = 220
BOX_HEIGHT = 26
ROW = 36
COLUMN = 260
MARGIN = 12
HEADING = 24
MAX_LABEL = 30
COLUMNS = ("agent", "workflows", "tools", "scopes")


@dataclass(frozen=True, slots=True)
class Box:
    key: str
    label: str
    column: int
    row: int
    css: str

    @property
    def x(self) -> int:
        return MARGIN + self.column * COLUMN

    @property
    def y(self) -> int:
        return MARGIN + HEADING + self.row * ROW


def _cut(text: str) -> str:
    """The label's end: workload ids differ in their last segments."""
    return text if len(text) <= MAX_LABEL else "…" + text[-(MAX_LABEL - 1) :]


def _box(box: Box) -> str:
    full = escape(box.label, quote=True)
    return (
        f'<g class="{box.css}" data-key="{escape(box.key, quote=True)}"><title>{full}</title>'
        f'<rect x="{box.x}" y="{box.y}" width="{BOX_WIDTH}" height="{BOX_HEIGHT}" rx="4"/>'
        f'<text x="{box.x + 8}" y="{box.y + 17}">{escape(_cut(box.label))}</text></g>'
    )


def _line(a: Box, b: Box, live: bool) -> str:
    css = "edge live" if live else "edge"
    x1, y1 = a.x + BOX_WIDTH, a.y + BOX_HEIGHT // 2
    x2, y2 = b.x, b.y + BOX_HEIGHT // 2
    return f'<line class="{css}" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}"/>'


def blast_picture(radius: BlastRadius) -> str:
    """The picture as an ``<svg>`` element (with a text alternative for screen readers)."""
    live_tools = dict(radius.live.by_tool)
    agent_live = radius.live.credentials > 0
    live_note = f" — {radius.live.credentials} live" if agent_live else ""
    agent = Box(
        "agent", radius.target + live_note, 0, 0, "node agent live" if agent_live else "node agent"
    )
    boxes: list[Box] = [agent]
    lines: list[str] = []
    tools: dict[str, Box] = {}
    scopes: dict[tuple[str, str], Box] = {}
    for w_row, reach in enumerate(radius.workflows):
        note = " (any user)" if reach.delegation == "asserted" else ""
        workflow = Box(
            f"workflow:{reach.workflow}", reach.workflow + note, 1, w_row, "node workflow"
        )
        boxes.append(workflow)
        lines.append(_line(agent, workflow, False))
        for grant in reach.tools:
            tool = tools.get(grant.tool)
            if tool is None:
                count = live_tools.get(grant.tool, 0)
                label = grant.tool + (f" — {count} live" if count else "")
                css = "node tool live" if count else "node tool"
                tool = Box(f"tool:{grant.tool}", label, 2, len(tools), css)
                tools[grant.tool] = tool
                boxes.append(tool)
            lines.append(_line(workflow, tool, grant.tool in live_tools))
            for scope in grant.scopes:
                key = (grant.tool, scope)
                if key not in scopes:
                    scopes[key] = Box(
                        f"scope:{grant.tool}:{scope}", scope, 3, len(scopes), "node scope"
                    )
                    boxes.append(scopes[key])
                    lines.append(_line(tool, scopes[key], False))
    rows = max(1, len(radius.workflows), len(tools), len(scopes))
    width = 2 * MARGIN + 3 * COLUMN + BOX_WIDTH
    height = 2 * MARGIN + HEADING + rows * ROW
    headings = "".join(
        f'<text class="heading" x="{MARGIN + i * COLUMN}" y="{MARGIN + 14}">{name}</text>'
        for i, name in enumerate(COLUMNS)
    )
    summary = (
        f"{radius.target}: {len(radius.workflows)} workflow(s), {len(tools)} tool(s), "
        f"{len(scopes)} scope(s), {radius.live.credentials} live credential(s)"
    )
    return (
        f'<svg class="blast" role="img" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f"<title>{escape(summary)}</title>{headings}{''.join(lines)}"
        f"{''.join(_box(b) for b in boxes)}</svg>"
    )
