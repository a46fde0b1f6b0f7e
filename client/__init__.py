"""FedA2V's Flower ClientApp."""
