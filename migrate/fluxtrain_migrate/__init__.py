"""fluxtrain-migrate: rewrite implicit-style fluxtrain scripts into the explicit style."""
