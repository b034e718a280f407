"""Components of the Kubernetes target (one per module); manifests.py holds their pure manifests."""
