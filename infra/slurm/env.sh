# Sourced by the SLURM scripts. Site-specific: edit module loads and paths, nothing secret.
# The store URI (with its password) comes from a file only you can read, outside the
# repository, e.g. ~/.config/matloop/env (chmod 600) holding
#   export MATLOOP_STORE_URI='mongodb://matloop:PASSWORD@db.cluster.example:27017/matloop?authSource=admin'
#   export PREFECT_API_URL=http://prefect.cluster.example:4200/api
# module load python/3.11            # if your site uses environment modules
MATLOOP_DIR=${MATLOOP_DIR:-$HOME/matloop}        # the project checkout with its .venv
source "$MATLOOP_DIR/.venv/bin/activate"
if [ -f "$HOME/.config/matloop/env" ]; then source "$HOME/.config/matloop/env"; fi
export DO_NOT_TRACK=1
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
cd "$MATLOOP_DIR"
