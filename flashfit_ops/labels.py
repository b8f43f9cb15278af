"""Every label FlashFit puts on Docker objects, and the roles it gives containers: the one place
they are spelled. Containers, networks, volumes, images and Swarm objects are found again by
them (`docker ps --filter label=io.flashfit.project=shop`), so a label renamed here is renamed
everywhere at once. Pure constants.

The keeper (execute/keeper_main.py) runs as a lone script inside its own container and cannot
import this module: it spells LABEL_PROJECT itself, and a unit test holds the two equal."""

# Containers, networks and volumes of a deploy.
LABEL_PROJECT = "io.flashfit.project"
LABEL_ROLE = "io.flashfit.role"  # one of the ROLE_ values below
LABEL_COLOR = "io.flashfit.color"
LABEL_VERSION = "io.flashfit.version"
LABEL_REPLICA = "io.flashfit.replica"
LABEL_DEPLOY = "io.flashfit.deploy"
# A digest of the monitoring containers' settings: a container whose digest differs is replaced.
LABEL_SPEC = "io.flashfit.spec"

# Swarm services, secrets and configs.
LABEL_TARGET = "io.flashfit.target"  # "swarm"
LABEL_SOURCE = "io.flashfit.source"  # the file a Swarm secret or config was made from
LABEL_SPEC_DIGEST = "io.flashfit.spec-digest"
# Docker's own: what `docker stack deploy` labels a stack's objects with.
LABEL_STACK_NAMESPACE = "com.docker.stack.namespace"

# Images.
LABEL_GIT_SHA = "io.flashfit.git-sha"
LABEL_BUILD_TIME = "io.flashfit.build-time"
LABEL_VARIANT = "io.flashfit.variant"  # cpu | gpu
LABEL_MODELS = "io.flashfit.models"  # baked | mounted (server.build.models when it was built)
LABEL_MODELS_DIGEST = "io.flashfit.models-digest"  # sha256 of the baked checkpoints (modelfolder.py)
LABEL_RECIPE = "io.flashfit.recipe"  # the bootstrapped base images' recipe key

ROLE_BACKEND = "backend"
ROLE_PROXY = "proxy"
ROLE_KEEPER = "keeper"
ROLE_MONITORING = "monitoring"
