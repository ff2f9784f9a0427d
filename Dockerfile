# ibreports as a container: the flow-run image of a docker or kubernetes work pool, or a
# process worker in a container (the default command). Nothing secret is baked in: the config,
# the keys and the passphrases reach the container at run time (docs/scale-out.md).
#
#   docker build -t ibreports:0.1.0 .
FROM python:3.11-slim

# gnupg: decryption (python-gnupg runs the gpg binary); git: the from-git pull steps of prefect.yaml.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gnupg git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The project, installed with the pinned dependency set (and prefect-aws for aws_credentials_block).
# /opt/ibreports also serves the local-folder pull step (IBREPORTS_HOME) when the code is not cloned.
WORKDIR /opt/ibreports
COPY pyproject.toml constraints.txt README.md prefect.yaml automations.yaml ./
COPY ibreports ./ibreports
COPY flows ./flows
RUN pip install --no-cache-dir -c constraints.txt '.[aws]'

# A non-root user; its home holds PREFECT_HOME and the working folder (where git_clone clones).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin ibreports \
    && mkdir -p /home/ibreports/work && chown ibreports:ibreports /home/ibreports/work
USER ibreports
WORKDIR /home/ibreports/work
ENV IBREPORTS_HOME=/opt/ibreports \
    IBREPORTS_CONFIG=/etc/ibreports/ibreports.toml \
    PREFECT_HOME=/home/ibreports/.prefect \
    PYTHONUNBUFFERED=1

CMD ["prefect", "worker", "start", "--pool", "ibreports"]
