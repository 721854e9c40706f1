"""Results of a campaign, read from the store: rows (:mod:`~matloop.results.rows`), the
exported folder (:mod:`~matloop.results.export`), reports, plots and latent maps."""
