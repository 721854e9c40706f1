"""Fill ${VAR} placeholders of a template from the environment into a private file.

FireWorks and jobflow-remote read their database password from YAML files. Keep the
templates (in infra/, with placeholders) in the repository and the filled-in files in your
home folder, readable by you only::

    export MATLOOP_DB_PASSWORD=…            # e.g. from ~/.config/matloop/env
    python infra/render_template.py infra/fireworks/my_launchpad.yaml ~/.fireworks/my_launchpad.yaml
    python infra/render_template.py infra/jobflow-remote/matloop.yaml ~/.jfremote/matloop.yaml

Placeholders follow matloop's store references: ${NAME}, ${NAME:-default}. The output is
written with mode 600; nothing is printed but the output path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from matloop.secrets import SecretError, resolve


def main(template: str, output: str) -> None:
    lines = Path(template).read_text().splitlines(keepends=True)
    try:  # comments may mention placeholders; only fill the lines that are data
        text = "".join(ln if ln.lstrip().startswith("#") else resolve(ln) for ln in lines)
    except SecretError as err:
        sys.exit(f"{template}: {err}")
    out = Path(output).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(out, 0o600)
    print(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
