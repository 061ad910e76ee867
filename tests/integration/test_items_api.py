"""Every endpoint through the Django test client; each rejected write leaves the state unchanged."""


def test_create_returns_the_item_with_its_location(api):
    response = api.post("/items", {"name": "  apple  ", "qty": 5})

    assert response.status_code == 201
    item = response.json()
    assert item == {"id": item["id"], "name": "apple", "qty": 5}
    assert response["Location"] == f"/items/{item['id']}"
    assert api.get(response["Location"]).json() == item
