// Swagger UI for Switchboard, served from this machine (no CDN).
// The API token the dashboard keeps in sessionStorage pre-fills the bearerAuth scheme,
// so "Try it out" works at once; "Authorize" changes it.
(function () {
  "use strict";
  var TOKEN_KEY = "switchboard.apiToken";
  var ui = window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    persistAuthorization: true,
    displayRequestDuration: true,
    tryItOutEnabled: true,
    validatorUrl: null, // never phone home for the validator badge
    onComplete: function () {
      var token = null;
      try { token = window.sessionStorage.getItem(TOKEN_KEY); } catch (e) { token = null; }
      if (token) {
        ui.preauthorizeApiKey("bearerAuth", token);
      }
    }
  });
  window.ui = ui;
})();
