"""FedA2V's Flower ServerApp."""
